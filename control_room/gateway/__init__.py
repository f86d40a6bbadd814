"""The HTTP gateway: the ops contract served as PostgREST serves it (`POST /rest/v1/rpc/<fn>`)."""
