"""meshlib as a proxyless xDS client: the foundation.

- `bootstrap`: gRPC's proxyless bootstrap JSON (gRFC A27, A29, A65) as frozen values.
  Pure JSON; importing it needs neither grpcio nor protobuf.
- `ads`: the ADS client (state of the world, xDS v3, one stream) on its own thread.
  Importing it needs the ``meshlib[xds]`` extra and raises `ConfigError` naming it
  when the extra is missing.

Both are internal until the translation into meshlib's policies (and
``Mesh.from_xds``) lands; nothing here is re-exported from `meshlib`.
"""
