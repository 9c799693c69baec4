"""The compozy.dev/v1alpha1 API: models (source of truth) and the CRDs generated from them."""
