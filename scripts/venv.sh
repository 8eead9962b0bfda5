# Sourced by scripts/demo and scripts/test: the pinned Python tools of
# tests/requirements.txt in .venv (moto for the AWS stand-in, kubernetes-validate, pytest).
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
export KUBERNETES_VALIDATE="$PWD/.venv/bin/kubernetes-validate"
export IPMGR_TESTENV_PYTHON="$PWD/.venv/bin/python"
if ! command -v ip >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null
fi
