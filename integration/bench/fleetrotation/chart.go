package fleetrotation

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"strings"
)

// Chart geometry.
const (
	chartW, chartH = 800, 500
	marginL        = 80
	marginR        = 20
	marginT        = 40
	marginB        = 60
	fontScale      = 2
)

var (
	colBackground = color.RGBA{255, 255, 255, 255}
	colAxis       = color.RGBA{0, 0, 0, 255}
	colGrid       = color.RGBA{225, 225, 225, 255}
	// lineColors: grace blue, restore orange, then others by order.
	lineColors = []color.RGBA{{31, 119, 180, 255}, {230, 100, 20, 255}, {44, 160, 44, 255}, {148, 103, 189, 255}}
)

// lineColor is the colour of run i's line.
func lineColor(runs []Result, i int) color.RGBA {
	switch runs[i].Mode {
	case "grace":
		return lineColors[0]
	case "restore":
		return lineColors[1]
	}
	return lineColors[2+i%2]
}

// Series is one line of a plot: its legend and its (x, y) points in order.
type Series struct {
	Label  string
	Color  color.RGBA
	Points [][2]float64
}

// WriteChart writes a PNG of devices confirmed (y) against seconds since
// the trigger (x), one line per run, with axis ticks and a legend.
func WriteChart(w io.Writer, runs []Result) error {
	if len(runs) == 0 {
		return errors.New("fleetrotation: no runs to chart")
	}
	series := make([]Series, len(runs))
	for i, r := range runs {
		col := lineColor(runs, i)
		pts := make([][2]float64, len(r.Progress))
		for j, p := range r.Progress {
			pts[j] = [2]float64{p.Seconds, float64(p.Confirmed)}
		}
		// The y range reaches the online devices even before they confirm.
		pts = append(pts[:len(pts):len(pts)], [2]float64{math.NaN(), float64(r.Online)})
		series[i] = Series{Label: fmt.Sprintf("%s C=%d %.1f/S", r.Mode, r.Concurrency, r.RotationsPerS), Color: col, Points: pts}
	}
	return WritePlot(w, "SECONDS SINCE TRIGGER", "DEVICES CONFIRMED", series)
}

// SeriesColor is the colour of the i-th of several series.
func SeriesColor(i int) color.RGBA { return lineColors[i%len(lineColors)] }

// WritePlot writes a PNG line plot of series, y against x from 0, with
// axis ticks, the two axis labels and a legend. A point whose x is NaN
// only widens the y range.
func WritePlot(w io.Writer, xLabel, yLabel string, series []Series) error {
	if len(series) == 0 {
		return errors.New("plot: no series")
	}
	img := image.NewRGBA(image.Rect(0, 0, chartW, chartH))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBackground}, image.Point{}, draw.Src)
	maxX, maxY := 1.0, 1.0
	for _, s := range series {
		for _, p := range s.Points {
			if !math.IsNaN(p[0]) {
				maxX = math.Max(maxX, p[0])
			}
			maxY = math.Max(maxY, p[1])
		}
	}
	xStep, yStep := niceStep(maxX), niceStep(maxY)
	maxX = math.Ceil(maxX/xStep) * xStep
	maxY = math.Ceil(maxY/yStep) * yStep
	x0, y0 := marginL, chartH-marginB
	x1, y1 := chartW-marginR, marginT
	px := func(s float64) int { return x0 + int(math.Round(s/maxX*float64(x1-x0))) }
	py := func(n float64) int { return y0 - int(math.Round(n/maxY*float64(y0-y1))) }

	// Grid and ticks.
	for v := 0.0; v <= maxX+xStep/2; v += xStep {
		x := px(v)
		vline(img, x, y1, y0, colGrid)
		vline(img, x, y0, y0+6, colAxis)
		s := fmtTick(v)
		drawText(img, x-textWidth(s)/2, y0+10, s, colAxis)
	}
	for v := 0.0; v <= maxY+yStep/2; v += yStep {
		y := py(v)
		hline(img, x0, x1, y, colGrid)
		hline(img, x0-6, x0, y, colAxis)
		s := fmtTick(v)
		drawText(img, x0-10-textWidth(s), y-7*fontScale/2, s, colAxis)
	}
	// Axes and labels.
	hline(img, x0, x1, y0, colAxis)
	vline(img, x0, y1, y0, colAxis)
	drawText(img, (x0+x1-textWidth(xLabel))/2, chartH-22, xLabel, colAxis)
	drawText(img, 10, 10, yLabel, colAxis)

	// Lines.
	for _, s := range series {
		var prev *[2]float64
		for j := range s.Points {
			p := &s.Points[j]
			if math.IsNaN(p[0]) {
				continue
			}
			if prev != nil {
				thickLine(img, px(prev[0]), py(prev[1]), px(p[0]), py(p[1]), s.Color)
			}
			prev = p
		}
	}
	// Legend, top left inside the plot.
	ly := y1 + 10
	for _, s := range series {
		fill(img, image.Rect(x0+12, ly+5, x0+40, ly+9), s.Color)
		drawText(img, x0+48, ly, strings.ToUpper(s.Label), colAxis)
		ly += 7*fontScale + 8
	}
	return png.Encode(w, img)
}

// niceStep is a tick step of 1, 2 or 5 times a power of ten giving about
// five ticks up to max.
func niceStep(max float64) float64 {
	raw := max / 5
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r.Intersect(img.Bounds()), &image.Uniform{c}, image.Point{}, draw.Src)
}

func hline(img *image.RGBA, xa, xb, y int, c color.RGBA) { fill(img, image.Rect(xa, y, xb+1, y+1), c) }
func vline(img *image.RGBA, x, ya, yb int, c color.RGBA) { fill(img, image.Rect(x, ya, x+1, yb+1), c) }

// thickLine draws a 3-pixel line from (xa, ya) to (xb, yb) (Bresenham).
func thickLine(img *image.RGBA, xa, ya, xb, yb int, c color.RGBA) {
	dx, dy := abs(xb-xa), -abs(yb-ya)
	sx, sy := 1, 1
	if xa > xb {
		sx = -1
	}
	if ya > yb {
		sy = -1
	}
	e := dx + dy
	for {
		fill(img, image.Rect(xa-1, ya-1, xa+2, ya+2), c)
		if xa == xb && ya == yb {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			xa += sx
		}
		if e2 <= dx {
			e += dx
			ya += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func textWidth(s string) int { return len(s) * 6 * fontScale }

// drawText draws s in the 5x7 font, top left at (x, y); unknown runes are
// blank.
func drawText(img *image.RGBA, x, y int, s string, c color.RGBA) {
	for _, r := range strings.ToUpper(s) {
		g, ok := font5x7[r]
		if ok {
			for row, bits := range g {
				for col := 0; col < 5; col++ {
					if bits&(1<<(4-col)) != 0 {
						fill(img, image.Rect(x+col*fontScale, y+row*fontScale, x+(col+1)*fontScale, y+(row+1)*fontScale), c)
					}
				}
			}
		}
		x += 6 * fontScale
	}
}

// font5x7 holds 7 rows of 5 bits (most significant bit left) per glyph.
var font5x7 = map[rune][7]uint8{
	'0': {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E},
	'1': {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
	'2': {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F},
	'3': {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
	'4': {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02},
	'5': {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
	'6': {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E},
	'7': {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
	'8': {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E},
	'9': {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},
	'A': {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},
	'B': {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},
	'C': {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E},
	'D': {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},
	'E': {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F},
	'F': {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},
	'G': {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F},
	'H': {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},
	'I': {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},
	'J': {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},
	'K': {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11},
	'L': {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},
	'M': {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11},
	'N': {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},
	'O': {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},
	'P': {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},
	'Q': {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D},
	'R': {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},
	'S': {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E},
	'T': {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},
	'U': {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},
	'V': {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},
	'W': {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A},
	'X': {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},
	'Y': {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04},
	'Z': {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},
	'.': {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C},
	'-': {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00},
	'=': {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00},
	'/': {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},
	':': {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00},
	'(': {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02},
	')': {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},
	'_': {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F},
}
