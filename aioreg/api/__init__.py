"""HTTP layer: routes, thin handlers over ``aioreg.domain.registry``, and spec error bodies."""
