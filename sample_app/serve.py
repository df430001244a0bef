"""A small WSGI server for the cdsim sample app where Apache + mod_wsgi is not used.

On Amazon Linux the scripts serve the app with httpd and mod_wsgi, as the classic CodeDeploy sample
does. Anywhere else (say a cdsim instance on Debian) start_server runs this instead: it loads the
same ``app.wsgi`` entry point Apache would load and serves it with the standard library.

    python3 serve.py [--port 80] [--wsgi /var/www/sample-app/app.wsgi]
"""
import argparse
import runpy
import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow client cannot block the health check."""

    daemon_threads = True
    allow_reuse_address = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--wsgi", default="/var/www/sample-app/app.wsgi",
                        help="the WSGI file defining `application`")
    args = parser.parse_args()
    application = runpy.run_path(args.wsgi)["application"]
    with make_server(args.host, args.port, application, server_class=ThreadingWSGIServer,
                     handler_class=WSGIRequestHandler) as server:
        print(f"serving {args.wsgi} on http://{args.host}:{server.server_port}/", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
