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
certs.mode, checked: managed, certManager or existingSecret. selfSigned, where the chart
generated the CA itself and kept it by reading the release's Secret back from the cluster,
was removed: `helm template` (Argo CD, Flux) sees no cluster, so every rendering made a new
CA, never in sync, and every sync rotated the certificate. The schema lets selfSigned and
the certs.selfSigned values of old releases through so that rendering fails here with what
to use instead. Nothing in the chart is random or read from the cluster: every mode renders
the same bytes every time (webhook/tests/helm.rs).
*/}}
{{- define "multus-ipmgr.certsMode" -}}
{{- $certs := .Values.certs -}}
{{- if or (eq $certs.mode "selfSigned") (hasKey $certs "selfSigned") -}}
{{- fail "certs.mode selfSigned was removed (and certs.selfSigned with it): it made a new CA on every render, so it is not reproducible under helm template or GitOps (Argo CD, Flux: never in sync, and every sync rotated the certificate). Use certs.mode managed, the default (the webhook keeps its CA and certificate in the Secret ipmgr-webhook-certs and writes its caBundle itself; validity in certs.managed), or certManager; and remove certs.selfSigned from your values." -}}
{{- end -}}
{{- $certs.mode -}}
{{- end }}

{{/*
Whether the webhook calls the Kubernetes API: in certs.mode managed (its Secret and caBundle),
or with webhook.networkResources (NetworkAttachmentDefinitions). "true" or empty.
*/}}
{{- define "multus-ipmgr.webhookCallsApi" -}}
{{- if or (eq (include "multus-ipmgr.certsMode" .) "managed") .Values.webhook.networkResources -}}
true
{{- end -}}
{{- end }}
