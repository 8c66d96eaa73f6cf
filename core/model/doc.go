// Package model holds espmdm's domain entities, value types and domain
// errors. It imports nothing of the project and carries no persistence or
// transport tags: adapters convert at their boundaries.
package model
