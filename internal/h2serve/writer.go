package h2serve

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// chunk is what one pass writes of a stream's answer.
type chunk struct {
	st      *stream
	headers bool
	data    []byte
	end     bool
}

// writeLoop writes the connection's frames: the control frames, then the
// answers as far as the peer's windows allow, and flushes only when there
// is nothing more to write, so that the answers ready together leave in
// one write. It closes the connection when it ends.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	defer func() { _ = c.nc.Close() }()
	var spare []ctrlFrame
	var plan []chunk
	c.mu.Lock()
	defer c.mu.Unlock()
	for !c.closed {
		ctrl := c.ctrl
		c.ctrl = spare[:0]
		plan = c.plan(plan[:0])
		maxFrame, tableSize, tableChanged := c.peerMaxFrame, c.peerTableSize, c.tableChanged
		c.tableChanged = false
		if len(ctrl) == 0 && len(plan) == 0 {
			spare = ctrl
			if c.bw.Buffered() > 0 {
				c.mu.Unlock()
				err := c.bw.Flush()
				c.mu.Lock()
				if err != nil {
					c.closed = true
				}
				continue
			}
			if c.closing || (c.goingAway && len(c.streams) == 0) {
				return
			}
			c.cond.Wait()
			continue
		}
		c.mu.Unlock()
		if tableChanged {
			c.henc.SetMaxDynamicTableSizeLimit(tableSize)
		}
		err := c.write(ctrl, plan, maxFrame)
		c.mu.Lock()
		spare = ctrl
		if err != nil {
			c.closed = true
			c.srv.logf("h2: write failed", "remote", c.remote, "err", c.srv.connError(err))
			break
		}
		for i := range plan {
			if ch := plan[i]; ch.end {
				c.finished(ch.st)
			}
			plan[i] = chunk{}
		}
	}
}

// plan takes what can be written now of the answers ready, in order,
// charging the windows. Under mu.
func (c *conn) plan(p []chunk) []chunk {
	kept := c.ready[:0]
	for _, st := range c.ready {
		ch := chunk{st: st}
		if !st.headersSent {
			ch.headers, st.headersSent = true, true
		}
		if rem := int64(st.out.Len() - st.sent); rem > 0 {
			if n := min(rem, st.sendWin, c.sendWin); n > 0 {
				ch.data = st.out.Bytes()[st.sent : st.sent+int(n)]
				st.sent += int(n)
				st.sendWin -= n
				c.sendWin -= n
			}
		}
		ch.end = st.sent == st.out.Len()
		if ch.headers || len(ch.data) > 0 {
			p = append(p, ch)
		}
		if !ch.end {
			kept = append(kept, st) // waits for the peer's window
		}
	}
	clear(c.ready[len(kept):])
	c.ready = kept
	return p
}

// finished forgets a stream whose answer is written whole; a client still
// sending its request is told to stop (RFC 9113 §8.1). Under mu.
func (c *conn) finished(st *stream) {
	if !st.ended && !st.gone {
		c.ctrl = append(c.ctrl, ctrlFrame{kind: ctrlReset, stream: st.id, n: uint32(http2.ErrCodeNo)})
	}
	c.drop(st)
	st.out.Reset()
	bufPool.Put(st.out)
	st.out = nil
}

// write writes frames to the buffer (which flushes when full). Outside mu.
func (c *conn) write(ctrl []ctrlFrame, plan []chunk, maxFrame uint32) error {
	if err := c.nc.SetWriteDeadline(time.Now().Add(orDefault(c.srv.WriteTimeout, time.Minute))); err != nil {
		return err
	}
	fr := c.fr
	for _, f := range ctrl {
		var err error
		switch f.kind {
		case ctrlSettingsAck:
			err = fr.WriteSettingsAck()
		case ctrlPingAck:
			err = fr.WritePing(true, f.ping)
		case ctrlWindowUpdate:
			err = fr.WriteWindowUpdate(f.stream, f.n)
		case ctrlReset:
			err = fr.WriteRSTStream(f.stream, http2.ErrCode(f.n))
		case ctrlGoAway:
			err = fr.WriteGoAway(f.stream, http2.ErrCode(f.n), nil)
		}
		if err != nil {
			return err
		}
	}
	for _, ch := range plan {
		st := ch.st
		if ch.headers {
			endStream := ch.end && len(ch.data) == 0
			if err := c.writeHeaders(st, endStream, maxFrame); err != nil {
				return err
			}
			if endStream {
				continue
			}
		}
		data := ch.data
		for len(data) > 0 || ch.end {
			n := min(len(data), int(maxFrame))
			last := n == len(data)
			if err := fr.WriteData(st.id, last && ch.end, data[:n]); err != nil {
				return err
			}
			data = data[n:]
			if last {
				break
			}
		}
	}
	return nil
}

// writeHeaders encodes and writes an answer's header block, in
// CONTINUATION frames past the peer's frame size.
func (c *conn) writeHeaders(st *stream, endStream bool, maxFrame uint32) error {
	c.hbuf.Reset()
	enc := c.henc
	field := func(name, value string) { _ = enc.WriteField(hpack.HeaderField{Name: name, Value: value}) }
	field(":status", statusText(st.status))
	for k, vs := range st.header {
		name := lowerKey(k)
		if connHeaders[name] {
			continue
		}
		for _, v := range vs {
			field(name, v)
		}
	}
	n := st.out.Len()
	if _, ok := st.header["Content-Length"]; !ok && st.status != http.StatusNoContent && st.status != http.StatusNotModified {
		field("content-length", strconv.Itoa(n))
	}
	if _, ok := st.header["Date"]; !ok {
		field("date", c.srv.dateNow())
	}
	if _, ok := st.header["Content-Type"]; !ok && n > 0 {
		field("content-type", http.DetectContentType(st.out.Bytes()))
	}
	block := c.hbuf.Bytes()
	first := true
	for first || len(block) > 0 {
		n := min(len(block), int(maxFrame))
		frag, end := block[:n], n == len(block)
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: frag, EndStream: endStream, EndHeaders: end})
		} else {
			err = c.fr.WriteContinuation(st.id, end, frag)
		}
		if err != nil {
			return err
		}
		first, block = false, block[n:]
	}
	return nil
}

func statusText(code int) string {
	switch code {
	case http.StatusOK:
		return "200"
	case http.StatusBadRequest:
		return "400"
	}
	return strconv.Itoa(code)
}

// lowered response header names, without an allocation each.
var lowerKeys = map[string]string{
	"Content-Type": "content-type", "Content-Length": "content-length", "Date": "date",
	"X-Amzn-Requestid": "x-amzn-requestid", "X-Amzn-Errortype": "x-amzn-errortype",
	"x-amzn-RequestId": "x-amzn-requestid", "X-Amzn-ErrorType": "x-amzn-errortype",
}

func lowerKey(k string) string {
	if l, ok := lowerKeys[k]; ok {
		return l
	}
	return strings.ToLower(k)
}
