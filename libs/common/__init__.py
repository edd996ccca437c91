"""Shared plumbing for chatplane services: settings, logging, the gRPC server bootstrap, clients, database helpers."""
