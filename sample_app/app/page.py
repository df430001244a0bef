"""The one page the cdsim sample app serves, and the same page as a plain WSGI callable.

Standard library only, so the page can be checked (and served) where Flask is not installed.
"""

# ValidateService fails unless the response body contains this text.
EXPECTED_TEXT = "Hello from cdsim sample app"

PAGE = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>cdsim sample app</title></head>
<body>
<h1>{EXPECTED_TEXT}</h1>
<p>This page was deployed by cdsim, a local AWS CodeDeploy agent.</p>
</body>
</html>
"""


def application(environ, start_response):
    """Plain WSGI: the page at ``/``, 404 elsewhere."""
    if environ.get("PATH_INFO", "/") not in ("", "/"):
        body = b"not found\n"
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body)))])
        return [body]
    body = PAGE.encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
