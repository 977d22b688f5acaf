#!/bin/sh
# fim on the lsm backend inside a test kernel: a write to a watched file, and the OCSF line
# fim reports for it, attributed to the process that wrote. Run it with
#   cargo xtask vm-run --kernel all tests/vm/examples/lsm-write.sh
# (docs/vm-run.md). `fim-vm` is the guest's helper around `fim run`.
set -eu

mkdir -p /srv/app
echo "listen = 8080" >/srv/app/app.conf

# One recursive rule on /srv/app; returns once fim's start scan has taken the baseline.
fim-vm start --backend lsm /srv/app

# A separate process appends to the watched file: the test actor opens it for writing, writes
# "appended" and exits. Its pid, executable and command line are in the OCSF line's actor.
fim-test-actor append /srv/app/app.conf

# The OCSF line (class 1001, activity 3 Update) with the actor, what changed and the hashes.
fim-vm events 1
fim-vm stop

# The same change from the store, as an operator would ask for it.
fim who /srv/app/app.conf
