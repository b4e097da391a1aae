# Thin recipes over `cargo xtask`; see README.md.

# Build the guest, set up what is missing, run every manifest, write JUnit.
test *args:
    cargo xtask test {{args}}

# The project's own checks: fmt, clippy, unit and integration tests, manifests.
ci:
    cargo xtask ci

# Print the plan: what runs where, what is skipped and why.
list *args:
    cargo xtask list {{args}}

# Explain what this host lacks and how to fix it.
doctor:
    cargo xtask doctor

# Install what is missing (QEMU from bookworm-backports, busybox-static, debootstrap, Rust target).
setup:
    cargo xtask setup

# Boot-to-verdict times, the QEMU floor and the runner's overhead.
bench *args:
    cargo xtask bench {{args}}

# Build the guest image into images/.
build:
    cargo xtask build

# Empty the per-user cache of host kernels and initramfs images (~/.cache/ukci).
clean-cache:
    cargo xtask clean-cache

# Print the CI matrix (kernel × lane) derived from the manifests, as JSON.
matrix *args:
    cargo xtask matrix {{args}}

# Put back devices a crashed run left changed, as the restore journal recorded them.
restore:
    cargo xtask restore
