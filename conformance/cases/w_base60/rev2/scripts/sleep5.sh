#!/bin/bash
# timeout 0:0:2 is 2 s: the agent sends SIGTERM to the process group after 1-2 s
trap 'echo got-TERM > /tmp/cdl-target/w_base60/marker_term_trapped; exit 143' TERM
echo "sleeping 5 s"
sleep 5 &
wait $!
echo "slept 5 s"
