; Ferry lab guest -- a tiny x86 guest that proves, on its serial port, that it
; keeps running and that its memory stays intact (e.g. across a live migration).
;
; Build:  nasm -f bin -o ferry-lab-guest.bin guest.asm   (see build.sh)
; Boot:   qemu-system-x86_64 -kernel ferry-lab-guest.bin -append "ws=64 rate=50"
;
; It is a Multiboot v1 kernel in a flat binary (a.out kludge), so QEMU's own
; multiboot loader can start it without any bootloader or download. QEMU enters
; us in 32-bit protected mode, paging off, EAX = 0x2BADB002, EBX = info pointer.
;
; Every pass over the working set verifies what the previous pass wrote into
; each 4 KiB page and then writes new values, so every page is dirtied on every
; pass (the worst case for a live migration) and any page that arrives stale or
; corrupted on the destination is reported as a MISMATCH.
;
; Serial protocol (COM1, one line each, "\n" terminated, decimal unless noted):
;   FERRY-GUEST boot ws=<MiB> rate=<MiB/s> mem=<MiB>[ clamped]
;   FERRY-GUEST hb pass=<p> ms=<ticks> errors=<n>
;   FERRY-GUEST clock pass=<p> gap=<ms>
;   FERRY-GUEST MISMATCH pass=<p> page=<i> want=0x<8 hex> got=0x<8 hex>
;   FERRY-GUEST FAULT vec=<n>
;   FERRY-GUEST key 0x<2 hex>[ <char>]   (a byte received on COM1, echoed)
;   FERRY-GUEST STALE pass=<p> lost=<n>  (memory lost a write the CPU made: see timer_isr)
;
; Every line also appears on the screen (VGA text mode, when the VM has one).

bits 32
cpu 386
org 0x100000                      ; multiboot load address (1 MiB)

; ---------------------------------------------------------------- constants
MB_MAGIC      equ 0x1BADB002
MB_FLAGS      equ (1 << 1) | (1 << 16)   ; want mem info; a.out kludge addresses
MB_BOOT_MAGIC equ 0x2BADB002             ; what the loader puts in EAX

WS_BASE       equ 0x200000        ; working set starts at 2 MiB (above us + cmdline)
PAGE          equ 4096
PAGE_XOR      equ 0xA5A5A5A5      ; pattern for dword 1, makes pages distinct
MAX_MM_LINES  equ 16              ; mismatch lines printed per pass, at most
HB_MS         equ 250             ; minimum spacing of heartbeats (ms)

COM1          equ 0x3F8
ECHO_MAX      equ 16              ; received bytes echoed per look, at most
VGA_TEXT      equ 0xB8000         ; the 80x25 text screen the firmware left
VGA_COLS      equ 80
VGA_CELLS     equ 80 * 25
VGA_BLANK     equ 0x0720          ; a space, grey on black
CMOS_INDEX    equ 0x70
CMOS_DATA     equ 0x71
RTC_SEC       equ 0x00
RTC_MIN       equ 0x02
RTC_HOUR      equ 0x04
RTC_REG_B     equ 0x0B
RTC_B_24H_BIN equ 0x06            ; register B: 24-hour mode (bit 1), binary, not BCD (bit 2)
SEC_PER_DAY   equ 86400
GAP_NOISE     equ 2               ; ms: a shortfall up to this is tick jitter
HPET_BASE     equ 0xFED00000      ; where QEMU's pc and q35 machines put the HPET
HPET_PERIOD   equ 0x04            ; main counter period in fs (upper half of GCAP_ID)
HPET_CONFIG   equ 0x10            ; bit 0 ENABLE_CNF: the main counter runs
HPET_COUNTER  equ 0xF0            ; main counter, low 32 bits
FS_PER_MS_HI  equ 0xE8            ; 10^12 fs = 1 ms = 0xE8_D4A51000
FS_PER_MS_LO  equ 0xD4A51000
PIT_DIVISOR   equ 1193            ; 1193182 Hz / 1193 ~= 1000 Hz -> 1 tick = 1 ms

DEF_WS        equ 64
DEF_RATE      equ 50
DEF_MEM_UPPER equ 31 * 1024       ; if the loader gives no memory info: assume 32 MiB

CODE_SEL      equ 0x08
DATA_SEL      equ 0x10
IDT_ENTRIES   equ 0x30            ; 0-31 faults, 0x20-0x2F PIC IRQs; higher -> #GP

section .text

; ---------------------------------------------------------- multiboot header
; Must be 4-byte aligned within the first 8 KiB; it is at offset 0.
align 4
mb_header:
        dd MB_MAGIC
        dd MB_FLAGS
        dd -(MB_MAGIC + MB_FLAGS)
        dd mb_header              ; header_addr
        dd mb_header              ; load_addr: file offset 0 is loaded here
        dd load_end               ; load_end_addr: end of file contents
        dd bss_end                ; bss_end_addr: loader zeroes up to here
        dd entry                  ; entry_addr

; -------------------------------------------------------------------- entry
entry:
        cli
        cld
        mov esi, eax              ; keep magic and info pointer; bss is zeroed below
        mov edx, ebx

        ; Our own GDT: the loader's one lives in memory we do not own.
        lgdt [gdt_desc]
        jmp CODE_SEL:.reload_cs
.reload_cs:
        mov ax, DATA_SEL
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, stack_top

        ; Zero .bss ourselves too (the loader should, but do not rely on it).
        mov edi, bss_start
        mov ecx, (bss_end - bss_start) / 4
        xor eax, eax
        rep stosd

        ; ---- read the multiboot info (copy the cmdline before touching memory)
        mov dword [mem_upper], DEF_MEM_UPPER
        cmp esi, MB_BOOT_MAGIC
        jne .no_mbi
        test dword [edx], 1 << 0  ; mem_lower/mem_upper valid
        jz .no_mem
        mov eax, [edx + 8]
        mov [mem_upper], eax
.no_mem:
        test dword [edx], 1 << 2  ; cmdline valid
        jz .no_mbi
        mov esi, [edx + 16]
        mov edi, cmdline
        mov ecx, CMDLINE_MAX - 1
.copy:  lodsb
        test al, al
        jz .copied
        stosb
        loop .copy
.copied:
        mov byte [edi], 0
.no_mbi:
        call serial_init          ; (clobbers edx: only now, info is read)
        call vga_clear

        ; ---- parameters
        mov dword [ws_mib], DEF_WS
        mov dword [rate], DEF_RATE
        call parse_cmdline

        ; ---- RAM size for the boot line: 1 MiB + mem_upper, rounded up (the
        ; firmware keeps a few KiB at the top, so -m 256 gives 255.9 MiB).
        mov eax, [mem_upper]
        add eax, 1023
        shr eax, 10
        inc eax
        mov [mem_mib], eax

        ; ---- clamp the working set to RAM: [2 MiB, 2 MiB + ws MiB) must end at or
        ; below 1 MiB + mem_upper KiB (rounded down to whole MiB).
        mov eax, [mem_upper]
        shr eax, 10
        inc eax                   ; eax = end of usable RAM, whole MiB
        sub eax, WS_BASE >> 20
        jg .have_room
        mov eax, 1                ; absurdly small RAM: still use one MiB
.have_room:
        cmp dword [ws_mib], eax
        jbe .ws_fits
        mov [ws_mib], eax
        mov byte [clamped], 1
.ws_fits:
        cmp dword [ws_mib], 0     ; ws=0 makes no sense: use 1 MiB
        jne .ws_nonzero
        mov dword [ws_mib], 1
        mov byte [clamped], 1
.ws_nonzero:
        mov eax, [ws_mib]
        shl eax, 8                ; 256 pages per MiB
        mov [npages], eax

        ; period_ms = ws * 1000 / rate (0 = never idle)
        xor eax, eax
        mov ecx, [rate]
        jecxz .no_period
        mov eax, [ws_mib]
        mov ebx, 1000
        mul ebx
        div ecx
.no_period:
        mov [period_ms], eax

        ; ---- interrupts: IDT, PIC, PIT; then go
        call idt_init
        call pic_init
        call pit_init
        call rtc_init
        call hpet_init
        sti

        ; ---- boot line
        mov esi, s_boot
        call puts
        mov eax, [ws_mib]
        call put_dec
        mov esi, s_rate
        call puts
        mov eax, [rate]
        call put_dec
        mov esi, s_mem
        call puts
        mov eax, [mem_mib]
        call put_dec
        cmp byte [clamped], 0
        je .boot_nl
        mov esi, s_clamped
        call puts
.boot_nl:
        mov al, 10
        call putc

        mov dword [pass], 1

; ---------------------------------------------------------------- main loop
main_loop:
        mov eax, [ticks]
        mov [pass_start], eax
        mov dword [mm_lines], 0

        ; Self-test hook: on pass == stale, move the CPU's copy of the tick count
        ; on by one, as if memory had lost the last tick's write.
        mov eax, [stale_at]
        test eax, eax
        jz .no_stale_test
        cmp eax, [pass]
        jne .no_stale_test
        cli
        mov eax, dr0
        inc eax
        mov dr0, eax
        sti
.no_stale_test:

        ; Self-test hook: on pass == corrupt, skip writing page 3.
        mov edi, 0xFFFFFFFF       ; page index to skip (none)
        mov eax, [corrupt]
        test eax, eax
        jz .no_skip
        cmp eax, [pass]
        jne .no_skip
        mov edi, 3
.no_skip:

        mov ebp, [pass]
        mov ebx, [npages]
        mov esi, WS_BASE
        xor ecx, ecx
.page:
        cmp byte [verify_on], 0   ; nothing to verify on the very first pass
        je .write
        lea eax, [ebp - 1]        ; dword 0 = previous pass number
        mov edx, [esi]
        cmp edx, eax
        jne .bad
        mov eax, ecx              ; dword 1 = page index ^ 0xA5A5A5A5
        xor eax, PAGE_XOR
        mov edx, [esi + 4]
        cmp edx, eax
        jne .bad
        lea eax, [ebp - 1]        ; last dword = previous pass ^ page index
        xor eax, ecx
        mov edx, [esi + PAGE - 4]
        cmp edx, eax
        jne .bad
.write:
        cmp ecx, edi
        je .next
        mov [esi], ebp
        mov eax, ecx
        xor eax, PAGE_XOR
        mov [esi + 4], eax
        mov eax, ebp
        xor eax, ecx
        mov [esi + PAGE - 4], eax
.next:
        add esi, PAGE
        inc ecx
        cmp ecx, ebx
        jb .page
        jmp .pass_done

.bad:   ; eax = wanted, edx = found (first differing dword of the page)
        inc dword [errors]
        cmp dword [mm_lines], MAX_MM_LINES
        jae .write
        inc dword [mm_lines]
        call report_mismatch
        jmp .write

.pass_done:
        mov byte [verify_on], 1
        call echo_input

        ; Throttle: idle (hlt, interrupts on) until the pass period is over.
        ; cli/sti around the check: sti's one-instruction shadow makes the
        ; "check then hlt" atomic, so no tick can slip in between unnoticed.
.wait:
        ; Every tick while idle, typing is echoed at once. Looked at here, without
        ; a call: the idle loop leaves the stack to the timer's frames alone, so
        ; a stack page that arrives a tick old after a move (see timer_isr) holds
        ; the same frame and the guest goes on; the loss is still reported.
        mov dx, COM1 + 5
        in al, dx
        test al, 0x01             ; LSR: data ready
        jz .idle
        call echo_input
.idle:  cli
        mov eax, [ticks]
        sub eax, [pass_start]
        cmp eax, [period_ms]
        jae .waited
        sti
        hlt
        jmp .wait
.waited:
        sti

        ; Heartbeat: always after passes 1 and 2, then at most every HB_MS.
        mov eax, [ticks]
        cmp dword [pass], 2
        jbe .hb
        mov edx, eax
        sub edx, [last_hb]
        cmp edx, HB_MS
        jb .no_hb
.hb:
        mov [last_hb], eax
        call heartbeat
.no_hb:
        inc dword [pass]
        jmp main_loop

; ----------------------------------------------------------- line printers
; eax = wanted, edx = found, ecx = page index, ebp = pass
report_mismatch:
        pushad
        push edx
        push eax
        mov esi, s_mm_pass
        call puts
        mov eax, ebp
        call put_dec
        mov esi, s_mm_page
        call puts
        mov eax, ecx
        call put_dec
        mov esi, s_mm_want
        call puts
        pop eax
        call put_hex
        mov esi, s_mm_got
        call puts
        pop eax
        call put_hex
        mov al, 10
        call putc
        popad
        ret

; eax = tick count to print. Then, once the RTC has given the guest a first
; whole second to measure from, the clock line: the longest gap in its own
; clock it measured since the previous clock line (see rtc_sample).
heartbeat:
        pushad
        push eax
        mov esi, s_hb_pass
        call puts
        mov eax, [pass]
        call put_dec
        mov esi, s_hb_ms
        call puts
        pop eax
        call put_dec
        mov esi, s_hb_err
        call puts
        mov eax, [errors]
        call put_dec
        mov al, 10
        call putc
        mov eax, [stale]
        cmp eax, [stale_told]
        je .no_stale
        mov [stale_told], eax
        mov esi, s_st_pass
        call puts
        mov eax, [pass]
        call put_dec
        mov esi, s_st_lost
        call puts
        mov eax, [stale_told]
        call put_dec
        mov al, 10
        call putc
.no_stale:
        cmp byte [rtc_state], 2
        jne .no_clock
        mov esi, s_ck_pass
        call puts
        mov eax, [pass]
        call put_dec
        mov esi, s_ck_gap
        call puts
        xor eax, eax
        xchg eax, [gap_max]       ; read and reset in one instruction: the timer
        call put_dec              ; interrupt cannot split it
        mov al, 10
        call putc
.no_clock:
        popad
        ret

; ------------------------------------------------------------ cmdline parse
; Space-separated words; "key=value" with a decimal value. Words without '='
; (QEMU may prepend the kernel file name) and unknown keys are ignored.
parse_cmdline:
        pushad
        mov esi, cmdline
.skip:  mov al, [esi]
        test al, al
        jz .done
        cmp al, ' '
        ja .word
        inc esi                   ; spaces, tabs and other control chars
        jmp .skip
.word:
        mov ebx, esi              ; ebx = word start
        xor edx, edx              ; edx = address of first '=' (0 = none)
.scan:  mov al, [esi]
        cmp al, ' '
        jbe .word_end
        cmp al, '='
        jne .scan_next
        test edx, edx
        jnz .scan_next
        mov edx, esi
.scan_next:
        inc esi
        jmp .scan
.word_end:                        ; esi = end of word
        test edx, edx
        jz .skip
        ; value: [edx+1, esi) must be 1+ decimal digits (saturating at 2^32-1)
        lea edi, [edx + 1]
        cmp edi, esi
        je .skip
        xor eax, eax
.digit: cmp edi, esi
        je .got_value
        movzx ecx, byte [edi]
        sub ecx, '0'
        cmp ecx, 9
        ja .skip                  ; not a number: ignore the word
        push edx
        mov edx, 10
        mul edx
        jc .sat_pop
        pop edx
        add eax, ecx
        jc .sat
        inc edi
        jmp .digit
.sat_pop:
        pop edx
.sat:   mov eax, 0xFFFFFFFF
.got_value:
        ; key: [ebx, edx), ecx = key length
        mov ecx, edx
        sub ecx, ebx
        jz .skip                  ; "=value": empty key
        mov edi, k_ws
        call key_is
        jne .not_ws
        mov [ws_mib], eax
        jmp .skip
.not_ws:
        mov edi, k_rate
        call key_is
        jne .not_rate
        mov [rate], eax
        jmp .skip
.not_rate:
        mov edi, k_corrupt
        call key_is
        jne .not_corrupt
        mov [corrupt], eax
        jmp .skip
.not_corrupt:
        mov edi, k_stale
        call key_is
        jne .skip
        mov [stale_at], eax
        jmp .skip
.done:  popad
        ret

; ZF=1 if the ecx bytes at ebx equal the NUL-terminated string at edi.
key_is:
        push ecx
        push esi
        push edi
        mov esi, ebx
        repe cmpsb                ; ecx = 0 leaves ZF set (empty compare)
        jne .out
        cmp byte [edi], 0         ; and the key string must end here
.out:   pop edi
        pop esi
        pop ecx
        ret

; ----------------------------------------------------------------- serial
serial_init:
        mov dx, COM1 + 1
        xor al, al
        out dx, al                ; IER: no UART interrupts, we poll
        mov dx, COM1 + 3
        mov al, 0x80
        out dx, al                ; LCR: DLAB on
        mov dx, COM1 + 0
        mov al, 1
        out dx, al                ; divisor 1 = 115200 baud
        mov dx, COM1 + 1
        xor al, al
        out dx, al
        mov dx, COM1 + 3
        mov al, 0x03
        out dx, al                ; 8N1, DLAB off
        mov dx, COM1 + 2
        mov al, 0xC7
        out dx, al                ; FIFO on, cleared
        mov dx, COM1 + 4
        mov al, 0x03
        out dx, al                ; DTR + RTS
        ret

; al = byte; waits for THR empty (LSR bit 5) first
putc:
        push edx
        push eax
        mov dx, COM1 + 5
.wait:  in al, dx
        test al, 0x20
        jz .wait
        pop eax
        mov dx, COM1
        out dx, al
        call vga_putc
        pop edx
        ret

; Echo what arrived on COM1 (LSR bit 0: data ready), one line per byte:
; "FERRY-GUEST key 0x61 a" (the character itself only if printable, not a
; space). Called from the main loop only, between lines, so an echo never
; splits another line.
echo_input:
        pushad
        mov ecx, ECHO_MAX
.next:  mov dx, COM1 + 5
        in al, dx
        test al, 0x01
        jz .done
        mov dx, COM1
        in al, dx                 ; RBR: the byte
        movzx ebx, al
        mov esi, s_key
        call puts
        mov al, bl
        call put_hex2
        cmp bl, 0x21
        jb .nl
        cmp bl, 0x7E
        ja .nl
        mov al, ' '
        call putc
        mov al, bl
        call putc
.nl:    mov al, 10
        call putc
        loop .next
.done:  popad
        ret

; al = byte, printed as 0x + 2 lowercase hex digits
put_hex2:
        pushad
        movzx edx, al
        mov al, '0'
        call putc
        mov al, 'x'
        call putc
        mov eax, edx
        shr eax, 4
        mov al, [hex_digits + eax]
        call putc
        mov eax, edx
        and eax, 0x0F
        mov al, [hex_digits + eax]
        call putc
        popad
        ret

; ------------------------------------------------------------------ screen
; The serial lines are also written to the text screen: one line per row; at
; the bottom it wraps round to the top, and the row about to be written is
; blanked first (writes only: no scrolling, no reads of video memory). Without
; a display device the writes go nowhere.
vga_clear:
        pushad
        mov edi, VGA_TEXT
        mov ecx, VGA_CELLS
        mov ax, VGA_BLANK
        rep stosw
        mov dword [vga_pos], 0
        popad
        ret

; al = byte
vga_putc:
        pushad
        mov edi, [vga_pos]        ; cell index, 0 .. VGA_CELLS - 1
        cmp al, 10
        je .newline
        mov ah, 0x07
        mov [VGA_TEXT + edi * 2], ax
        inc edi
        mov eax, edi
        xor edx, edx
        mov ecx, VGA_COLS
        div ecx
        test edx, edx
        jnz .store                ; still inside the row
        jmp .blank                ; a full row: go on in the next one
.newline:
        mov eax, edi
        xor edx, edx
        mov ecx, VGA_COLS
        div ecx
        inc eax
        imul edi, eax, VGA_COLS
.blank: cmp edi, VGA_CELLS
        jb .clear_row
        xor edi, edi
.clear_row:
        push edi
        lea edi, [VGA_TEXT + edi * 2]
        mov ecx, VGA_COLS
        mov ax, VGA_BLANK
        rep stosw
        pop edi
.store: mov [vga_pos], edi
        popad
        ret

; esi = NUL-terminated string
puts:
        push eax
        push esi
.next:  lodsb
        test al, al
        jz .done
        call putc
        jmp .next
.done:  pop esi
        pop eax
        ret

; eax = unsigned value, printed in decimal without leading zeros
put_dec:
        pushad
        mov ebx, 10
        xor ecx, ecx
.div:   xor edx, edx
        div ebx
        push edx
        inc ecx
        test eax, eax
        jnz .div
.out:   pop eax
        add al, '0'
        call putc
        loop .out
        popad
        ret

; eax = value, printed as 0x + 8 lowercase hex digits
put_hex:
        pushad
        mov edx, eax
        mov al, '0'
        call putc
        mov al, 'x'
        call putc
        mov ecx, 8
.nib:   rol edx, 4
        mov eax, edx
        and eax, 0x0F
        mov al, [hex_digits + eax]
        call putc
        loop .nib
        popad
        ret

; ------------------------------------------------------------- interrupts
idt_init:
        pushad
        mov edi, idt
        xor ecx, ecx
.entry: cmp ecx, 0x20
        jae .irq
        mov eax, ecx              ; vectors 0-31: 16-byte fault stubs
        shl eax, 4
        add eax, fault_stubs
        jmp .set
.irq:   mov eax, timer_isr
        cmp ecx, 0x20
        je .set
        mov eax, irq_master_isr
        cmp ecx, 0x28
        jb .set
        mov eax, irq_slave_isr
.set:   mov [edi], ax             ; offset 15:0
        mov word [edi + 2], CODE_SEL
        mov word [edi + 4], 0x8E00 ; present, DPL 0, 32-bit interrupt gate
        shr eax, 16
        mov [edi + 6], ax         ; offset 31:16
        add edi, 8
        inc ecx
        cmp ecx, IDT_ENTRIES
        jb .entry
        lidt [idt_desc]
        popad
        ret

; Remap the 8259s to 0x20-0x2F (the BIOS default 0x08-0x0F collides with CPU
; exceptions) and unmask only IRQ0, the PIT.
pic_init:
        mov al, 0x11              ; ICW1: edge, cascade, ICW4 follows
        out 0x20, al
        out 0xA0, al
        mov al, 0x20              ; ICW2: vector bases
        out 0x21, al
        mov al, 0x28
        out 0xA1, al
        mov al, 0x04              ; ICW3: slave on IRQ2
        out 0x21, al
        mov al, 0x02
        out 0xA1, al
        mov al, 0x01              ; ICW4: 8086 mode
        out 0x21, al
        out 0xA1, al
        mov al, 0xFE              ; masks: only IRQ0
        out 0x21, al
        mov al, 0xFF
        out 0xA1, al
        ret

pit_init:
        mov al, 0x34              ; channel 0, lobyte/hibyte, mode 2 (rate gen)
        out 0x43, al
        mov al, PIT_DIVISOR & 0xFF
        out 0x40, al
        mov al, PIT_DIVISOR >> 8
        out 0x40, al
        ret

; Lost writes: the tick count is kept in memory twice (ticks, and tick_echo on
; the stack's page) and once in DR0, a CPU register (carried by a migration
; with the rest of the CPU's state; no breakpoint is enabled in DR7, so it is
; only a store). Memory that disagrees with the register lost the last tick's
; write: a move delivered the page older than the CPU. Counted, and reported
; at the next heartbeat as a STALE line.
timer_isr:
        pushad
        mov eax, dr0
        cmp eax, [ticks]
        je .ticks_ok
        inc dword [stale]
.ticks_ok:
        cmp eax, [tick_echo]
        je .echo_ok
        inc dword [stale]
.echo_ok:
        inc eax                   ; 1 tick = 1 ms since boot (migrates with RAM)
        mov [ticks], eax
        mov [tick_echo], eax
        mov dr0, eax
        call rtc_sample
        mov al, 0x20
        out 0x20, al              ; EOI master
        popad
        iret

; ------------------------------------------------- the gap the guest sees
; How long the guest's own clock stood still, measured by the guest itself.
;
; The guest's clocks (the HPET, the PIT ticks, the TSC, the ACPI PM timer) run
; on QEMU's virtual clock, which stops while the VM is paused and is carried
; over by a migration: a pause or a move's blackout is invisible to them. The
; CMOS RTC is the one device that keeps following the host: with QEMU's
; default -rtc clock=host (Ferry passes it explicitly) it reads the host's wall
; clock, runs on while the VM is stopped, and a migration carries its
; reference to the host clock, so on the destination it reads that host's time
; (clock=vm would stop with the VM; clock=rt restarts from the saved time on
; the destination, hiding the blackout). Its resolution is one second, but the
; instant its seconds register changes is exact host time.
;
; So at each new RTC second the guest adds the host time since the previous
; new second (whole seconds) to an offset and takes off its own clock's time
; over the same stretch: the offset rises by the time its clock stood still.
; Its clock here is the HPET's main counter (100 MHz under QEMU, never loses
; counts); without an HPET, the tick count, which also loses the ticks a busy
; host delays. The RTC is sampled in the timer interrupt (two port accesses
; per tick, no busy loop: an idle guest still costs the host next to
; nothing), so a new second is noticed within a tick, or as late as a busy
; host delivers the tick; a late second makes the offset look smaller by that
; much. So the offset is compared with a reference: its highest value, which
; may follow it down by 1 ms a second (more than any drift between the host's
; clocks): a rise above it is a shortfall, lateness never is (but a second
; noticed late just after a stall makes the stall look that much shorter).
;
; A stall that ends in the middle of a second is seen in two parts: at the
; first change of second after it, noticed only at the resume, the stall less
; the part of that second already gone; at the next one, the rest. So a
; shortfall above the noise waits for the next second, which adds its own
; shortfall, and the sum is reported once: the stall whole (another stall in
; the same two seconds would add in). The largest gap since the previous
; heartbeat is printed after it as "clock ... gap=<ms>", one to two seconds
; after the stall ended. Across hosts, their clock offset adds in (NTP keeps
; it to ms); a gap longer than a day is seen modulo a day.
;
; rtc_state: 0 = nothing read yet; 1 = waiting for the first change of second
; (the first reading is mid-second: no reference); 2 = measuring.
rtc_init:
        mov al, RTC_REG_B         ; binary 24-hour values: no BCD or AM/PM decoding
        out CMOS_INDEX, al
        in al, CMOS_DATA
        or al, RTC_B_24H_BIN
        mov ah, al
        mov al, RTC_REG_B
        out CMOS_INDEX, al
        mov al, ah
        out CMOS_DATA, al
        ret

; Called from the timer interrupt (interrupts off); may clobber eax-edx.
rtc_sample:
        mov al, RTC_SEC
        out CMOS_INDEX, al
        in al, CMOS_DATA
        cmp byte [rtc_state], 0
        jne .have_sec
        mov [rtc_sec], al
        mov byte [rtc_state], 1
        ret
.have_sec:
        cmp al, [rtc_sec]
        je .done                  ; same second: the common case, 2 port accesses
        ; A new second: read minutes and hours, then the seconds again; if the
        ; second turned over meanwhile, take it on the next tick instead.
        mov bl, al
        mov al, RTC_MIN
        out CMOS_INDEX, al
        in al, CMOS_DATA
        mov bh, al
        mov al, RTC_HOUR
        out CMOS_INDEX, al
        in al, CMOS_DATA
        mov cl, al
        mov al, RTC_SEC
        out CMOS_INDEX, al
        in al, CMOS_DATA
        cmp al, bl
        jne .done
        mov [rtc_sec], bl
        ; eax = second of the day = hours * 3600 + minutes * 60 + seconds
        movzx eax, cl
        imul eax, eax, 60
        movzx edx, bh
        add eax, edx
        imul eax, eax, 60
        movzx edx, bl
        add eax, edx
        call guest_clock          ; edx = the guest's clock now
        cmp byte [rtc_state], 2
        jne .reference
        ; The offset of host time over the guest's clock (ms, since the first
        ; new second) += host ms since the previous new second (across
        ; midnight too) - the guest's ms over the same stretch.
        mov ecx, eax
        sub ecx, [rtc_sod]
        jns .no_wrap
        add ecx, SEC_PER_DAY
.no_wrap:
        imul ecx, ecx, 1000
        add ecx, [offset]
        push eax
        push edx
        mov eax, edx
        sub eax, [rtc_clk]        ; 32-bit HPET counts wrap after 42 s: fine
        mov ebx, [hpet_cpms]
        test ebx, ebx
        jz .in_ms                 ; tick counts are ms already
        xor edx, edx
        add eax, [clk_rem]        ; with the counts left over last time, so
        adc edx, 0                ; that rounding never adds up
        div ebx
        mov [clk_rem], edx
.in_ms:
        sub ecx, eax
        pop edx
        pop eax
        mov [offset], ecx
        sub ecx, [offset_max]     ; ecx = how far it rose above its reference
        jg .rose
        ; Not above: this second was noticed late (the offset looks smaller
        ; by that much) or the two clocks drift apart; the reference follows
        ; it down by at most 1 ms a second, so lateness never counts.
        mov ecx, [offset]
        mov ebx, [offset_max]
        dec ebx
        cmp ecx, ebx
        jge .follow
        mov ecx, ebx
.follow:
        mov [offset_max], ecx
        xor ecx, ecx
        jmp .short
.rose:  add [offset_max], ecx     ; ecx = this second's shortfall
.short: cmp dword [gap_pending], 0
        je .no_pending
        add ecx, [gap_pending]    ; the rest of a stall that ended mid-second
        mov dword [gap_pending], 0
        jmp .report
.no_pending:
        cmp ecx, GAP_NOISE
        jbe .report
        mov [gap_pending], ecx    ; maybe only the first part: see next second
        jmp .reference
.report:
        cmp ecx, [gap_max]
        jbe .reference
        mov [gap_max], ecx
.reference:
        mov [rtc_sod], eax
        mov [rtc_clk], edx
        mov byte [rtc_state], 2
.done:  ret

; The HPET, if there is one (0 < period <= 100 ns, as its specification
; says; without one the read gives 0 or all ones): count its ticks per ms
; and start its main counter (no timers, no interrupts, no legacy mode).
hpet_init:
        mov ecx, [HPET_BASE + HPET_PERIOD]
        test ecx, ecx
        jz .none
        cmp ecx, 100000000
        ja .none
        mov edx, FS_PER_MS_HI
        mov eax, FS_PER_MS_LO
        div ecx
        mov [hpet_cpms], eax
        or dword [HPET_BASE + HPET_CONFIG], 1
.none:  ret

; edx = the guest's clock: the HPET main counter, or the tick count (ms)
; without an HPET.
guest_clock:
        mov edx, [ticks]
        cmp dword [hpet_cpms], 0
        je .out
        mov edx, [HPET_BASE + HPET_COUNTER]
.out:   ret

irq_master_isr:
        push eax
        mov al, 0x20
        out 0x20, al
        pop eax
        iret

irq_slave_isr:
        push eax
        mov al, 0x20
        out 0xA0, al              ; EOI slave, then master (cascade)
        out 0x20, al
        pop eax
        iret

; One 16-byte stub per CPU exception: push the vector, go report it.
align 16
fault_stubs:
%assign v 0
%rep 32
        push dword v
        jmp near fault_common
        times (fault_stubs + (v + 1) * 16) - $ db 0xCC
%assign v v + 1
%endrep

; Report and stop for good; never return into a broken context.
fault_common:
        cli
        pop eax                   ; vector (any CPU error code sits below it)
        mov esi, s_fault
        call puts
        call put_dec
        mov al, 10
        call putc
.halt:  cli
        hlt
        jmp .halt

; ------------------------------------------------------------------ data
align 8
gdt:
        dq 0                      ; null
        dq 0x00CF9A000000FFFF     ; 0x08: flat 4 GiB code, 32-bit
        dq 0x00CF92000000FFFF     ; 0x10: flat 4 GiB data
gdt_end:
gdt_desc:
        dw gdt_end - gdt - 1
        dd gdt

idt_desc:
        dw IDT_ENTRIES * 8 - 1
        dd idt

hex_digits: db "0123456789abcdef"
k_ws:       db "ws", 0
k_rate:     db "rate", 0
k_corrupt:  db "corrupt", 0
k_stale:    db "stale", 0
s_boot:     db "FERRY-GUEST boot ws=", 0
s_rate:     db " rate=", 0
s_mem:      db " mem=", 0
s_clamped:  db " clamped", 0
s_hb_pass:  db "FERRY-GUEST hb pass=", 0
s_hb_ms:    db " ms=", 0
s_hb_err:   db " errors=", 0
s_ck_pass:  db "FERRY-GUEST clock pass=", 0
s_ck_gap:   db " gap=", 0
s_mm_pass:  db "FERRY-GUEST MISMATCH pass=", 0
s_mm_page:  db " page=", 0
s_mm_want:  db " want=", 0
s_mm_got:   db " got=", 0
s_fault:    db "FERRY-GUEST FAULT vec=", 0
s_key:      db "FERRY-GUEST key ", 0
s_st_pass:  db "FERRY-GUEST STALE pass=", 0
s_st_lost:  db " lost=", 0

align 4
load_end:                         ; end of the file contents

; ------------------------------------------------------------------- bss
section .bss align=16
bss_start:
CMDLINE_MAX equ 256
cmdline:    resb CMDLINE_MAX
idt:        resq IDT_ENTRIES
ticks:      resd 1                ; ms since boot, bumped by IRQ0
pass:       resd 1
pass_start: resd 1
last_hb:    resd 1
errors:     resd 1
mm_lines:   resd 1
ws_mib:     resd 1
rate:       resd 1
corrupt:    resd 1
stale_at:   resd 1                ; self-test: the pass whose start loses a tick write
period_ms:  resd 1
npages:     resd 1
mem_upper:  resd 1
mem_mib:    resd 1
rtc_sod:    resd 1                ; RTC second of the day at the last new second
rtc_clk:    resd 1                ; the guest's clock at that moment (guest_clock)
hpet_cpms:  resd 1                ; HPET counts per ms; 0 = no HPET, use ticks
gap_pending: resd 1               ; a shortfall (ms) waiting for the next second
offset:     resd 1                ; host ms - guest ms since the reference
offset_max: resd 1                ; its reference: the highest, less 1 ms a second
clk_rem:    resd 1                ; HPET counts not yet counted as a whole ms
gap_max:    resd 1                ; largest gap (ms) since the last clock line
vga_pos:    resd 1                ; the screen cell the next character goes to
stale:      resd 1                ; tick writes memory lost (see timer_isr)
stale_told: resd 1                ; ... as far as a STALE line has told
clamped:    resb 1
verify_on:  resb 1
rtc_state:  resb 1                ; see rtc_sample
rtc_sec:    resb 1                ; RTC seconds register at the last sample
alignb 16
stack:      resb 16384
stack_top:
tick_echo:  resd 1                ; on the page of the stack's latest frames
bss_end:
