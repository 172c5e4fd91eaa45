# Two services, each with a Connect sidecar proxy (Envoy, started by `concord connect envoy`).
# The sidecars get ports 21000 and 21001 from the agent's sidecar port range.

service {
  name = "counting"
  id   = "counting-1"
  port = 9003

  connect {
    sidecar_service {}
  }

  check {
    id       = "counting-http"
    name     = "counting HTTP on 9003"
    http     = "http://127.0.0.1:9003/health"
    interval = "10s"
    timeout  = "1s"
  }
}

service {
  name = "dashboard"
  id   = "dashboard"
  port = 9002

  connect {
    sidecar_service {
      proxy {
        upstreams = [
          {
            destination_name = "counting"
            local_bind_port  = 9191
          }
        ]
      }
    }
  }

  check {
    id       = "dashboard-http"
    name     = "dashboard HTTP on 9002"
    http     = "http://127.0.0.1:9002/health"
    interval = "10s"
    timeout  = "1s"
  }
}
