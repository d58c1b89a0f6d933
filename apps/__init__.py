"""llmos.apps: user space. The CLI, the demo and the apps that ship with llmos.

Apps use only llmos.syscalls (and llmos to boot a kernel)."""
