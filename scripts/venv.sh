# Sourced by scripts/demo and scripts/test: the pinned Python tools of
# tests/requirements.txt in .venv (moto for the AWS stand-in, kubernetes-validate, pytest),
# and iproute2 for the bed's pods. Installs Debian packages only as root.
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "$1 is missing: install the Debian package(s) ${*:2} (or run as root), then rerun" >&2
    return 1
  fi
  apt-get update -qq && apt-get install -y -qq "${@:2}" >/dev/null
}
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install "python3 -m venv" python3-venv
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
export KUBERNETES_VALIDATE="$PWD/.venv/bin/kubernetes-validate"
export IPMGR_TESTENV_PYTHON="$PWD/.venv/bin/python"
if ! command -v ip >/dev/null 2>&1; then
  apt_install "ip" iproute2
fi
