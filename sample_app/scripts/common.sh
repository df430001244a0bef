# Settings and helpers shared by the sample app's hook scripts. Sourced by them, not a hook itself.

APP_USER=ec2-user
APP_HOME=/home/ec2-user/sample-app        # the whole revision (appspec: / -> here)
WSGI_FILE=/var/www/sample-app/app.wsgi    # the WSGI entry point (appspec: /app.wsgi -> /var/www/sample-app)
PORT=80
PID_FILE=/var/run/sample-app.pid          # the Python server's pid (not used with httpd)
LOG_FILE=/var/log/sample-app.log          # the Python server's output (not used with httpd)
EXPECTED_TEXT="Hello from cdsim sample app"

# Amazon Linux (dnf or yum present): serve with httpd + mod_wsgi, as the classic CodeDeploy sample
# does. Anywhere else (say a cdsim instance on Debian): serve the same app.wsgi with serve.py.
uses_httpd() {
    command -v dnf >/dev/null 2>&1 || command -v yum >/dev/null 2>&1
}

has_systemd() {
    [ -d /run/systemd/system ]
}

# The interpreter that runs the app: the one mod_wsgi embeds, or the first python3 on the PATH the
# agent service gives hooks (its systemd unit sources /etc/profile: the system's python3, not yours).
if uses_httpd; then
    APP_PYTHON=/usr/bin/python3
else
    APP_PYTHON=$(command -v python3) || { echo "python3 is not on PATH ($PATH): install it" >&2; exit 1; }
fi

# True while process $1 exists and is not a zombie.
is_running() {
    local pid=$1 _pid _comm state
    [ -r "/proc/$pid/stat" ] || return 1
    read -r _pid _comm state _ < "/proc/$pid/stat" || return 1
    [ "$state" != Z ]
}

# Wait up to 10 s for something to accept connections on $PORT; with a pid ($1), give up as soon
# as that process has exited and show its log.
wait_for_port() {
    local pid=${1:-}
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        if [ -n "$pid" ] && ! is_running "$pid"; then
            echo "the server exited at once; its output ($LOG_FILE):" >&2
            cat "$LOG_FILE" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    echo "nothing accepts connections on port $PORT after 10 seconds" >&2
    return 1
}
