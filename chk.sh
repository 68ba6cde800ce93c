#!/bin/bash
P=$(cat /tmp/pass-fixture/cw/pid)
echo "  fds=$(ls /proc/$P/fd | wc -l) conns: $(ss -tanp | grep "pid=$P," | grep -v LISTEN | awk '{print $1, $4, $5}' | tr '\n' ';')"
