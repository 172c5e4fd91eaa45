ports {
  http = 9500
  grpc = 9502
}
node_meta {
  zone = "a"
}
performance {
  raft_multiplier = 2
}
max_query_time = "2m"
