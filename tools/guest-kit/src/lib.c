/* guest-kit: serial console, printf, small string helpers, CRC-32. */
#include "kit.h"

/* ---- 16550 UART on COM1 ---- */
#define COM1      0x3f8
#define UART_THR  0	/* transmit holding (DLAB=0) */
#define UART_DLL  0	/* divisor low (DLAB=1) */
#define UART_IER  1
#define UART_DLM  1	/* divisor high (DLAB=1) */
#define UART_FCR  2
#define UART_LCR  3
#define UART_MCR  4
#define UART_LSR  5
#define LSR_THRE  0x20

void serial_init(void)
{
	outb(COM1 + UART_IER, 0x00);	/* no UART interrupts */
	outb(COM1 + UART_LCR, 0x80);	/* DLAB on */
	outb(COM1 + UART_DLL, 0x01);	/* 115200 / 1 */
	outb(COM1 + UART_DLM, 0x00);
	outb(COM1 + UART_LCR, 0x03);	/* 8N1, DLAB off */
	outb(COM1 + UART_FCR, 0xc7);	/* enable + clear FIFOs */
	outb(COM1 + UART_MCR, 0x03);	/* DTR | RTS, OUT2 off (no IRQ) */
}

static void serial_putc(char c)
{
	/* Bounded poll: a VMM whose LSR never reports THRE must not hang us. */
	for (unsigned i = 0; i < 4096; i++)
		if (inb(COM1 + UART_LSR) & LSR_THRE)
			break;
	outb(COM1 + UART_THR, (uint8_t)c);
}

static void put_char(char c)
{
	if (c == '\n')
		serial_putc('\r');
	serial_putc(c);
}

/* ---- printf: %s %c %d %i %u %x %X %p %%, flags '-' '0', width, '*',
 *      precision for %s, length h hh l ll z ---- */
static void pad(int n, char c)
{
	while (n-- > 0)
		put_char(c);
}

static void put_num(uint64_t v, unsigned base, int upper, int neg,
		    int width, int zero, int left)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char buf[24];
	int n = 0;

	do {
		buf[n++] = digits[v % base];
		v /= base;
	} while (v);

	int len = n + (neg ? 1 : 0);
	if (!left && !zero)
		pad(width - len, ' ');
	if (neg)
		put_char('-');
	if (!left && zero)
		pad(width - len, '0');
	while (n)
		put_char(buf[--n]);
	if (left)
		pad(width - len, ' ');
}

void kvprintf(const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put_char(*fmt);
			continue;
		}
		fmt++;

		int left = 0, zero = 0, width = 0, prec = -1, lng = 0;
		for (;; fmt++) {
			if (*fmt == '-')
				left = 1;
			else if (*fmt == '0')
				zero = 1;
			else
				break;
		}
		if (*fmt == '*') {
			width = va_arg(ap, int);
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		if (*fmt == '.') {
			fmt++;
			prec = 0;
			if (*fmt == '*') {
				prec = va_arg(ap, int);
				fmt++;
			}
			while (*fmt >= '0' && *fmt <= '9')
				prec = prec * 10 + (*fmt++ - '0');
		}
		while (*fmt == 'l' || *fmt == 'z' || *fmt == 'h') {
			if (*fmt != 'h')
				lng = 1;
			fmt++;
		}

		switch (*fmt) {
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
			put_num(u, 10, 0, v < 0, width, zero, left);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			put_num(v, *fmt == 'u' ? 10 : 16, *fmt == 'X', 0,
				width, zero, left);
			break;
		}
		case 'p':
			put_char('0');
			put_char('x');
			put_num((uintptr_t)va_arg(ap, void *), 16, 0, 0,
				width, zero, left);
			break;
		case 'c': {
			char c = (char)va_arg(ap, int);
			if (!left)
				pad(width - 1, ' ');
			put_char(c);
			if (left)
				pad(width - 1, ' ');
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			int len = 0;
			while (s[len] && (prec < 0 || len < prec))
				len++;
			if (!left)
				pad(width - len, ' ');
			for (int i = 0; i < len; i++)
				put_char(s[i]);
			if (left)
				pad(width - len, ' ');
			break;
		}
		case '%':
			put_char('%');
			break;
		case '\0':
			return;
		default:	/* unknown: print it verbatim */
			put_char('%');
			put_char(*fmt);
			break;
		}
	}
}

void kprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	kvprintf(fmt, ap);
	va_end(ap);
}

/* ---- strings / memory ---- */
size_t kstrlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int kstrcmp(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return (unsigned char)*a - (unsigned char)*b;
}

/* Decimal or 0x-prefixed hex. Returns 1 on success. */
int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	unsigned base = 10;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (!*s)
		return 0;
	for (; *s; s++) {
		unsigned d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			return 0;
		v = v * base + d;
	}
	*out = v;
	return 1;
}

/* The compiler may emit calls to these; rep movs/stos is one emulated
 * instruction per call rather than a loop of many. */
void *memset(void *d, int c, size_t n)
{
	void *ret = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return ret;
}

void *memcpy(void *d, const void *s, size_t n)
{
	void *ret = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return ret;
}

void *memmove(void *d, const void *s, size_t n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;

	if (dp <= sp || dp >= sp + n)
		return memcpy(d, s, n);
	while (n--)
		dp[n] = sp[n];
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] - y[i];
	return 0;
}

/*
 * IEEE CRC-32 (zlib.crc32), slicing-by-8: ~3.5 instructions per byte, which
 * matters when every guest instruction is emulated. Tables built on first use.
 */
typedef uint64_t __attribute__((may_alias)) u64_alias;
static uint32_t crc_tab[8][256];
static int crc_ready;

static void crc_init(void)
{
	for (unsigned i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
		crc_tab[0][i] = c;
	}
	for (unsigned i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^
					crc_tab[0][crc_tab[t - 1][i] & 0xff];
	crc_ready = 1;
}

uint32_t crc32(const void *buf, uint64_t len)
{
	return crc32_update(0, buf, len);
}

uint32_t crc32_update(uint32_t crc, const void *buf, uint64_t len)
{
	const uint8_t *p = buf;
	uint32_t c = ~crc;

	if (!crc_ready)
		crc_init();
	while (len && ((uintptr_t)p & 7)) {
		c = crc_tab[0][(c ^ *p++) & 0xff] ^ (c >> 8);
		len--;
	}
	while (len >= 8) {
		uint64_t w = *(const u64_alias *)p ^ c;
		c = crc_tab[7][w & 0xff] ^ crc_tab[6][(w >> 8) & 0xff] ^
		    crc_tab[5][(w >> 16) & 0xff] ^ crc_tab[4][(w >> 24) & 0xff] ^
		    crc_tab[3][(w >> 32) & 0xff] ^ crc_tab[2][(w >> 40) & 0xff] ^
		    crc_tab[1][(w >> 48) & 0xff] ^ crc_tab[0][w >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		c = crc_tab[0][(c ^ *p++) & 0xff] ^ (c >> 8);
	return ~c;
}
