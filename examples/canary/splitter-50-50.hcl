# 50% of the requests for api go to subset v1, 50% to v2.
Kind = "service-splitter"
Name = "api"

Splits = [
  {
    Weight        = 50
    ServiceSubset = "v1"
  },
  {
    Weight        = 50
    ServiceSubset = "v2"
  },
]
