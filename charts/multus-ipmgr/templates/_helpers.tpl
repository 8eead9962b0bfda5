{{/*
The chart adds no labels of its own (no helm.sh/chart, no managed-by): the objects carry
exactly the labels of manifests/, so that `helm template` and `kubectl kustomize manifests/`
render the same objects (webhook/tests/helm.rs).
*/}}

{{- define "multus-ipmgr.webhookLabels" -}}
app.kubernetes.io/name: ipmgr-webhook
app.kubernetes.io/part-of: multus-ipmgr
{{- end }}

{{- define "multus-ipmgr.agentLabels" -}}
app.kubernetes.io/name: ipmgr-agent
app.kubernetes.io/part-of: multus-ipmgr
{{- end }}

{{- define "multus-ipmgr.policyLabels" -}}
app.kubernetes.io/name: ipmgr-policy
app.kubernetes.io/part-of: multus-ipmgr
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "multus-ipmgr.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end }}

{{/* A number as the webhook and the agent parse it: integers without exponent or ".0". */}}
{{- define "multus-ipmgr.number" -}}
{{- if and (kindIs "float64" .) (eq (float64 .) (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end }}

{{/* The Secret that holds the serving certificate. */}}
{{- define "multus-ipmgr.tlsSecretName" -}}
{{- if eq .Values.certs.mode "existingSecret" -}}
{{- required "certs.existingSecret.name is required with certs.mode existingSecret" .Values.certs.existingSecret.name -}}
{{- else -}}
ipmgr-webhook-tls
{{- end -}}
{{- end }}

{{/*
certs.mode selfSigned: the CA and the serving certificate, as a dict {ca, cert, key} of PEM
strings. Reused from the Secret the release made before (lookup: on `helm upgrade`), else
generated; generated once per render and kept in .Values, so that the Secret and the
caBundle of the MutatingWebhookConfiguration hold the same CA.
*/}}
{{- define "multus-ipmgr.selfSignedCerts" -}}
{{- if not (hasKey .Values "__selfSignedCerts") -}}
{{- $namespace := .Release.Namespace -}}
{{- $pair := dict -}}
{{- $existing := lookup "v1" "Secret" $namespace "ipmgr-webhook-tls" -}}
{{- if and $existing (not .Values.certs.selfSigned.regenerate) -}}
{{- $data := $existing.data | default dict -}}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") -}}
{{- $pair = dict "ca" (index $data "ca.crt" | b64dec) "cert" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) -}}
{{- end -}}
{{- end -}}
{{- if not $pair.ca -}}
{{- $days := int .Values.certs.selfSigned.days -}}
{{- $ca := genCA (printf "multus-ipmgr webhook CA (%s)" $namespace) $days -}}
{{- $names := list "ipmgr-webhook" (printf "ipmgr-webhook.%s" $namespace) (printf "ipmgr-webhook.%s.svc" $namespace) (printf "ipmgr-webhook.%s.svc.cluster.local" $namespace) -}}
{{- $cert := genSignedCert (printf "ipmgr-webhook.%s.svc" $namespace) nil $names $days $ca -}}
{{- $pair = dict "ca" $ca.Cert "cert" $cert.Cert "key" $cert.Key -}}
{{- end -}}
{{- $_ := set .Values "__selfSignedCerts" $pair -}}
{{- end -}}
{{- toYaml (index .Values "__selfSignedCerts") -}}
{{- end }}
