# 0% of the requests for api go to subset v1, 100% to v2.
Kind = "service-splitter"
Name = "api"

Splits = [
  {
    Weight        = 0
    ServiceSubset = "v1"
  },
  {
    Weight        = 100
    ServiceSubset = "v2"
  },
]
