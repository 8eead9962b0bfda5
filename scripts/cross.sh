# Sourced by scripts/images, scripts/release and scripts/test (from the repository's root):
# what a static linux/arm64 build needs, installed when missing, and the environment that
# makes cargo use it. Idempotent; as a non-root user it installs only the rustup target and
# says which Debian packages to install.
#
#   the rustup target aarch64-unknown-linux-gnu (for the toolchain of rust-toolchain.toml);
#   gcc-aarch64-linux-gnu (linker, and the C compiler of ring), libc6-dev-arm64-cross (the
#   static glibc crt-static links), qemu-user-static (qemu-aarch64-static: runs the arm64
#   binaries on this machine, for the tests).
#
# Exports CROSS_TRIPLE and the linker and CC of that target. The static flag itself
# (RUSTFLAGS=-C target-feature=+crt-static) is the caller's, as for the host build: with
# --target it applies to the target's artifacts only, not to build scripts or proc-macros.
CROSS_TRIPLE=aarch64-unknown-linux-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx "$CROSS_TRIPLE"; then
  rustup target add "$CROSS_TRIPLE"
fi
cross_missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || cross_missing+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/lib/libc.a ] || cross_missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null 2>&1 || cross_missing+=(qemu-user-static)
if [ ${#cross_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${cross_missing[@]}" >/dev/null
  else
    echo "the arm64 build needs the Debian package(s) ${cross_missing[*]}: install them (or run as root), then rerun" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
unset cross_missing
export CROSS_TRIPLE
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
