"""A local CodeDeploy service: the API server, its SQLite state, the deployment engine and the agents.

Module map: ``store`` (SQLite documents), ``engine`` (deployment configurations, batching, rollback,
stop), ``api`` (the CodeDeploy operations and their AWS-shaped errors), ``server`` (HTTP, the S3
proxy, background threads), ``agent_loop`` (the polling agent), ``runner`` (one deployment on one
instance, run inside it), ``s3`` (the moto S3 server beside it), ``client`` (calling the server).
"""
