"""The conversation service: conversations and messages owned by users, replies streamed through inference.

Layout: ``settings`` (env ``CHATPLANE_CONVERSATION_*``), ``models`` + ``migrations`` (tables), ``store`` (queries; the
one commit seam), ``prompt`` (history within the context window), ``service`` (the domain core,
``ConversationCore``), ``servicer`` (the thin gRPC adapter), ``server`` (``create_server``, ``running``, ``serve``).

In-process use (tests of other services)::

    async with running(ConversationSettings(database_url=..., inference_pools=..., port=0)) as srv:
        stub = ConversationServiceStub(grpc.aio.insecure_channel(srv.address))
"""
