# Two subsets of api, by the instances' Meta.version; requests not sent to a subset by a
# splitter go to v1.
Kind          = "service-resolver"
Name          = "api"
DefaultSubset = "v1"

Subsets = {
  v1 = {
    Filter = "Service.Meta.version == v1"
  }
  v2 = {
    Filter = "Service.Meta.version == v2"
  }
}
