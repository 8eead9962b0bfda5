# Sourced by scripts/images, scripts/test and scripts/demo: podman as this machine runs it,
# installing podman and runc (Debian) as root when missing. Sets PODMAN (the command with its
# global flags; override it to use your own) and CONTAINERS_CONF.
#
# Here: the vfs storage driver (no overlay mounts in this sandbox), runc (crun refuses the
# hybrid cgroup layout) with cgroupfs, and a containers.conf without the default rlimits
# (this machine refuses the ones podman sets) or a pids limit.
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
  fi
fi
if [ -z "${CONTAINERS_CONF:-}" ]; then
  CONTAINERS_CONF="$PWD/target/containers.conf"
  mkdir -p target
  printf '[containers]\ndefault_ulimits = []\npids_limit = 0\n' > "$CONTAINERS_CONF"
  export CONTAINERS_CONF
fi
export PODMAN="${PODMAN:-podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs --events-backend file}"
