"""The models stage: each endpoint's input contract, from the model documents to JSON Schemas.

Modules:
  documents  model documents (fal pages in their text styles, a proxy's tables) → EndpointDoc
  schemas    the build-time generator (documents → schemas/endpoints/…) and the run-time
             registry every job is checked against (SchemaRegistry, Violation)
  sizes      fal's image-size presets and the size a request asks for

Nothing is imported here: the registry loads jsonschema, which `renderer --version` never needs.
"""
