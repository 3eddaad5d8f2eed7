//go:build tools

// Package tools pins the Jaeger command as a dependency of this module.
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
