// nvmlsym.h: the NVML trampolines' machinery. trampolines_gen.go (generated)
// instantiates MC_NVML_TRAMPOLINE once per NVML function that go-nvml calls
// and defines the table; bind.go fills and clears it.
//
// A trampoline is a tail jump: it loads mc_nvml_fn[idx] and, when it is set,
// jumps there with the caller's registers and stack untouched, so one shape
// serves every NVML signature and no prototype has to be declared here.
// When it is NULL (nothing bound, or the bound library lacks the function)
// it jumps to `fallback`, which returns NVML_ERROR_FUNCTION_NOT_FOUND (or,
// for the one NVML function returning a string, a fixed message): a call
// made without NVML is an error code, never a jump to address 0.
//
// Every symbol here is hidden: go-nvml's objects in the same link resolve
// their NVML references to the trampolines, and the extension exports none
// of them, so nothing stays undefined for the dynamic loader (the extension
// loads under RTLD_NOW) and no other library in the process sees them.
#ifndef PYMOONCAKE_NVMLSYM_H
#define PYMOONCAKE_NVMLSYM_H

#include <stddef.h>

// NVML_ERROR_FUNCTION_NOT_FOUND of nvml.h (go-nvml's ERROR_FUNCTION_NOT_FOUND;
// bind_test.go calls an unbound function through go-nvml and expects it).
#define MC_NVML_ERROR_FUNCTION_NOT_FOUND 13

#define MC_NVML_HIDDEN __attribute__((visibility("hidden")))

// mc_nvml_fn[i] is the address of names[i] in the bound library, or NULL;
// mc_nvml_count is its length (both defined by trampolines_gen.go).
extern MC_NVML_HIDDEN void *mc_nvml_fn[];
extern MC_NVML_HIDDEN const size_t mc_nvml_count;

// The fallbacks of unbound trampolines (defined in bind.go). They ignore
// the arguments the caller left in registers.
MC_NVML_HIDDEN int mc_nvml_unbound(void);
MC_NVML_HIDDEN const char *mc_nvml_unbound_string(void);

#if defined(__x86_64__)
// r11 is scratch and carries no argument in the SysV ABI.
#define MC_NVML_TRAMPOLINE(name, idx, fallback) __asm__(                  \
	".pushsection .text\n"                                               \
	".globl " #name "\n"                                                 \
	".hidden " #name "\n"                                                \
	".type " #name ", %function\n"                                       \
	".p2align 4\n"                                                       \
	#name ":\n"                                                          \
	".cfi_startproc\n"                                                   \
	"\tmovq mc_nvml_fn+8*" #idx "(%rip), %r11\n"                         \
	"\ttestq %r11, %r11\n"                                               \
	"\tjz " #fallback "\n"                                               \
	"\tjmp *%r11\n"                                                      \
	".cfi_endproc\n"                                                     \
	".size " #name ", .-" #name "\n"                                     \
	".popsection\n")
#elif defined(__aarch64__)
// x16 (IP0) is the register the ABI sets aside for veneers and PLT stubs.
// The fallback is reached by an unconditional branch, which the linker
// can extend with a veneer; a conditional one could not reach it in a
// large extension.
#define MC_NVML_TRAMPOLINE(name, idx, fallback) __asm__(                  \
	".pushsection .text\n"                                               \
	".globl " #name "\n"                                                 \
	".hidden " #name "\n"                                                \
	".type " #name ", %function\n"                                       \
	".p2align 2\n"                                                       \
	#name ":\n"                                                          \
	".cfi_startproc\n"                                                   \
	"\tadrp x16, mc_nvml_fn+8*" #idx "\n"                                \
	"\tldr x16, [x16, :lo12:mc_nvml_fn+8*" #idx "]\n"                    \
	"\tcbz x16, 1f\n"                                                    \
	"\tbr x16\n"                                                         \
	"1:\tb " #fallback "\n"                                              \
	".cfi_endproc\n"                                                     \
	".size " #name ", .-" #name "\n"                                     \
	".popsection\n")
#else
#error "nvmlsym: NVML trampolines exist for x86-64 and AArch64 only"
#endif

#endif // PYMOONCAKE_NVMLSYM_H
