package portstest_test

import (
	"testing"

	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

func TestBlobStoreContract(t *testing.T) {
	portstest.RunBlobStoreContract(t, func(t *testing.T) ports.BlobStore {
		return portstest.NewBlobStore()
	})
}
