"""``make bench``: throughput, latency and memory figures of Sluice on the embedded stack.

Every figure is measured on the stack the bench starts itself (Tansu + chDB in temp
dirs), one load at a time, so the numbers are comparable between runs on one machine.
"""
