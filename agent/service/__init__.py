"""A local CodeDeploy service: the API server, its SQLite state, the deployment engine and the agents.

Module map: ``store`` (SQLite documents), ``engine`` (deployment configurations, batching, rollback,
stop), ``api`` (the CodeDeploy operations and their AWS-shaped errors), ``server`` (HTTP with limits,
the request check, S3 dispatch, background threads), ``auth`` (the credentials file, SigV4 signing and
verifying), ``revisions`` (what a revision may name), ``agent_loop`` (the polling agent), ``runner``
(one deployment on one instance, run inside it), ``s3`` (moto's S3 inside the server),
``client`` (calling the server, signed).
"""
