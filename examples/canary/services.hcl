# Two instances of `api` told apart by Meta.version (the service-resolver's subsets filter on
# it), each with a sidecar, and a `web` client whose sidecar exposes upstream `api` on
# 127.0.0.1:9192. web itself is only a registration (nothing listens on 9000): the client
# is curl against 127.0.0.1:9192.

service {
  name = "api"
  id   = "api-v1"
  port = 9011
  meta = {
    version = "v1"
  }

  connect {
    sidecar_service {}
  }

  check {
    id       = "api-v1-http"
    name     = "api v1 HTTP on 9011"
    http     = "http://127.0.0.1:9011/"
    interval = "10s"
    timeout  = "1s"
  }
}

service {
  name = "api"
  id   = "api-v2"
  port = 9012
  meta = {
    version = "v2"
  }

  connect {
    sidecar_service {}
  }

  check {
    id       = "api-v2-http"
    name     = "api v2 HTTP on 9012"
    http     = "http://127.0.0.1:9012/"
    interval = "10s"
    timeout  = "1s"
  }
}

service {
  name = "web"
  id   = "web"
  port = 9000

  connect {
    sidecar_service {
      proxy {
        upstreams = [
          {
            destination_name = "api"
            local_bind_port  = 9192
          }
        ]
      }
    }
  }
}
