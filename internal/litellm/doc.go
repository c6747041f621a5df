// Package litellm holds what the runner must know about LiteLLM: the form of
// virtual and master keys, how keys are hashed and displayed, the tables of
// its PostgreSQL schema, and the three formats it uses to encrypt values at
// rest.
package litellm
