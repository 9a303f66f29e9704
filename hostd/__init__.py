"""hostd: the daemon on each hypervisor host (issue #3, in progress).

One task tree per VM owns that VM's QEMU chardev socket; the node API serves
the controller. See README.md for what is built.
"""
