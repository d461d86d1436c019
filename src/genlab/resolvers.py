"""`import genlab.resolvers` registers genlab's OmegaConf resolvers before a script or test
composes conf/ on its own. The resolvers themselves, and the one registration function, live in
genlab.composition; code of the package calls `register_resolvers()` (or composes through
`genlab.composition.compose`, which does)."""

from genlab.composition import register_resolvers

register_resolvers()
