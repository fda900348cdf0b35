"""Ray actors wrapping generator and reward-model replicas (filled in by the distributed pipeline).

Nothing here is imported by ``pipeline``'s statistics or policies: the search core runs without Ray.
"""
