#!/bin/sh
# timeout 0:01 is 60 s for Psych (a reader taking it as 1 s would kill this script)
sleep 1.2
echo "slept 1.2 s under a 0:01 timeout"
