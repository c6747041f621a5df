package strictyaml

import (
	"fmt"
	"io"
	"os"
)

// ReadFile reads at most MaxSize+1 bytes of a file: enough for Parse to
// tell that it is too large without reading all of a huge one.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() && !fi.Mode().IsDir() {
		// A FIFO or device could block or never end; the size cap covers
		// the rest.
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	return io.ReadAll(io.LimitReader(f, MaxSize+1))
}
