"""``chatplane`` admin command: status, scaling and logs of a chatplane release on Kubernetes.

The logic (tables, scaling decisions, metrics parsing) is pure and works on the ``kubernetes`` client's model objects;
:mod:`chatplane.admin.cluster` is the thin layer that talks to the API server.
"""
