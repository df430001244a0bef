#!/bin/sh
echo "umask $(umask)"
