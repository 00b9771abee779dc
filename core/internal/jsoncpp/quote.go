// Package jsoncpp writes JSON strings exactly as jsoncpp 1.9.5 (Mooncake's
// JSON library) does, so that every message and descriptor pymooncake sends
// has the bytes a Mooncake peer would send. One quoter serves the handshake
// messages and the segment descriptors alike.
package jsoncpp

// AppendQuoted appends s as a JSON string the way jsoncpp 1.9.5's
// valueToQuotedStringN does without emitUTF8 (FastWriter's setting): the
// short escapes for " \ \b \f \n \r \t; \u00xx for other control bytes;
// printable ASCII and DEL as is; every other character as \uxxxx with
// lower-case hex, above U+FFFF as a surrogate pair. Bytes that are not valid
// UTF-8 are decoded as jsoncpp decodes them (see jsoncppCodepoint), so even
// invalid strings come out as Mooncake would write them.
func AppendQuoted(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			cp, size := jsoncppCodepoint(s[i:])
			switch {
			case cp < 0x20:
				dst = appendHex(dst, cp)
			case cp < 0x80:
				dst = append(dst, byte(cp))
			case cp < 0x10000:
				dst = appendHex(dst, cp)
			default:
				cp -= 0x10000
				dst = appendHex(dst, 0xd800+((cp>>10)&0x3ff))
				dst = appendHex(dst, 0xdc00+(cp&0x3ff))
			}
			i += size
			continue
		}
		i++
	}
	return append(dst, '"')
}

func appendHex(dst []byte, v uint32) []byte {
	const digits = "0123456789abcdef"
	return append(dst, '\\', 'u',
		digits[(v>>12)&0xf], digits[(v>>8)&0xf], digits[(v>>4)&0xf], digits[v&0xf])
}

// replacement is U+FFFD, which jsoncpp writes for what it cannot decode.
const replacement = 0xfffd

// jsoncppCodepoint decodes the character at the start of s (non-empty) as
// jsoncpp 1.9.5's utf8ToCodepoint does, and returns it with the number of
// bytes it consumed. That decoder looks only at the lead byte to pick a
// length and masks the following bytes without checking them; a sequence cut
// off by the end of s yields U+FFFD and consumes one byte; an overlong form
// or a surrogate yields U+FFFD and consumes its whole length.
func jsoncppCodepoint(s string) (uint32, int) {
	b0 := uint32(s[0])
	cont := func(i int) uint32 { return uint32(s[i]) & 0x3f }
	switch {
	case b0 < 0x80:
		return b0, 1
	case b0 < 0xe0:
		if len(s) < 2 {
			return replacement, 1
		}
		cp := (b0&0x1f)<<6 | cont(1)
		if cp < 0x80 {
			return replacement, 2
		}
		return cp, 2
	case b0 < 0xf0:
		if len(s) < 3 {
			return replacement, 1
		}
		cp := (b0&0x0f)<<12 | cont(1)<<6 | cont(2)
		if cp >= 0xd800 && cp <= 0xdfff || cp < 0x800 {
			return replacement, 3
		}
		return cp, 3
	case b0 < 0xf8:
		if len(s) < 4 {
			return replacement, 1
		}
		cp := (b0&0x07)<<18 | cont(1)<<12 | cont(2)<<6 | cont(3)
		if cp < 0x10000 {
			return replacement, 4
		}
		return cp, 4
	}
	return replacement, 1
}
