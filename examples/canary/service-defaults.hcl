# api speaks HTTP, so its sidecars and web's upstream listener route per request (L7), which
# service-splitter needs.
Kind     = "service-defaults"
Name     = "api"
Protocol = "http"
