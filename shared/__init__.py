"""Code shared by the API and the workers: the domain, the store and the broker."""
