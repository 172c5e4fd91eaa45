# Agent TLS: the stanza, one deprecated flat key mapped onto it, and an HTTPS port.
ports {
  https = 8501
}
tls {
  defaults {
    ca_file   = "/etc/concord/tls/consul-agent-ca.pem"
    cert_file = "/etc/concord/tls/dc1-server-consul-0.pem"
    key_file  = "/etc/concord/tls/dc1-server-consul-0-key.pem"
    verify_outgoing = true
  }
  internal_rpc {
    verify_incoming = true
  }
  https {
    tls_min_version = "TLSv1_3"
  }
}
verify_server_hostname = true
