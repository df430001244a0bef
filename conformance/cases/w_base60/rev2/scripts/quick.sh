#!/bin/sh
echo "$LIFECYCLE_EVENT ok"
