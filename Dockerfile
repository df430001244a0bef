# Amazon Linux 2023 with cdsim, deploying the sample app the way the real agent would: `cdsim local`
# on the machine itself (here the container), as root, with the agent's configuration file.
# From the project folder:
#
#   docker build -t cdsim-al2023 .
#   docker run --rm -p 8080:80 cdsim-al2023     # deploys, then: curl localhost:8080
#
# The deployment runs when the container starts (a server started during the build would not
# survive it); its hooks install httpd + mod_wsgi with dnf, as on an EC2 instance.
FROM amazonlinux:2023

# Python 3.11 for cdsim (the system python3 is 3.9); util-linux: su, which runs `runas` hooks;
# shadow-utils: useradd for the sample's BeforeInstall (the minimal base image may lack both)
RUN dnf install -y python3.11 python3.11-pip util-linux shadow-utils && dnf clean all

COPY . /opt/cdsim
RUN python3.11 -m pip install --no-cache-dir /opt/cdsim

# the agent's configuration file, where `cdsim local` (like codedeploy-local) looks for it
RUN mkdir -p /etc/codedeploy-agent/conf \
 && printf '%s\n' '---' \
      ":log_dir: '/var/log/aws/codedeploy-agent/'" \
      ":root_dir: '/opt/codedeploy-agent/deployment-root'" \
      > /etc/codedeploy-agent/conf/codedeployagent.yml

EXPOSE 80
WORKDIR /tmp
# Deploy, then stay in the foreground on httpd's logs (httpd runs detached, as under the agent).
CMD ["/bin/bash", "-c", "cdsim local --bundle-location /opt/cdsim/sample_app --type directory && exec tail -F /var/log/httpd/sample_app_access.log /var/log/httpd/sample_app_error.log"]
