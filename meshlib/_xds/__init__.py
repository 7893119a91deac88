"""meshlib as a proxyless xDS client.

- `bootstrap`: gRPC's proxyless bootstrap JSON (gRFC A27, A29, A65) as frozen values.
  Pure JSON; importing it needs neither grpcio nor protobuf.
- `ads`: the ADS client (state of the world, xDS v3, one stream) on its own thread.
- `fields`, `routes`, `clusters`, `tls`, `translate`: the translation, pure functions
  from Envoy's messages to meshlib's own values (routes, clusters, policies, the
  clusters' `TLS` from the bootstrap's certificate providers), refusing what meshlib
  cannot honour (`fields.Refused`).
- `source`: follows the control plane for a Mesh (``Mesh.from_xds``).

Every module but `bootstrap` needs the ``meshlib[xds]`` extra; importing one without
it raises `ConfigError` naming the extra. Nothing here is re-exported from `meshlib`.
"""
