# 90% of the requests for api go to subset v1, 10% to v2.
Kind = "service-splitter"
Name = "api"

Splits = [
  {
    Weight        = 90
    ServiceSubset = "v1"
  },
  {
    Weight        = 10
    ServiceSubset = "v2"
  },
]
